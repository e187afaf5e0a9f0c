// Package names holds the one rule for a dmsnap device name (the NAME of
// dmsnap-NAME), which package dm checks before it builds a stack and
// package session before it registers a device: they used to differ on
// '+'. It knows nothing else.
package names

import (
	"fmt"
	"regexp"
)

// MaxLen bounds a name so that the longest device-mapper name built from
// it, "dmsnap-NAME-snapNNNNNNNNNN", fits DM_NAME_LEN (128).
const MaxLen = 100

// reservedSuffix: a name ending like one of the stack's device suffixes
// would make two stacks' device-mapper names collide ("a" owns
// dmsnap-a-snap1; a device named "a-snap1" would own it too).
var reservedSuffix = regexp.MustCompile(`-(real|snap[0-9]+|cow[0-9]+)$`)

// Byte reports whether c may appear in a name: [A-Za-z0-9_.-], the bytes
// the seed kept in its session directory names (snapstore.SanitizeName
// turns every other into '_').
func Byte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
}

// Validate checks a name: 1 to MaxLen bytes of [A-Za-z0-9_.-], not "." or
// "..", not ending in "-real", "-snap<digits>" or "-cow<digits>". The error says which rule
// the name breaks and quotes it.
func Validate(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty device name")
	case len(name) > MaxLen:
		return fmt.Errorf("device name %q is longer than %d bytes", name, MaxLen)
	case name == "." || name == "..":
		return fmt.Errorf("device name %q is not allowed", name)
	case reservedSuffix.MatchString(name):
		return fmt.Errorf("device name %q ends like a dmsnap device (-real, -snapN, -cowN)", name)
	}
	for i := 0; i < len(name); i++ {
		if !Byte(name[i]) {
			return fmt.Errorf("device name %q: use only letters, digits and _ . -", name)
		}
	}
	return nil
}
