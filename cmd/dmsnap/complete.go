package main

import (
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmsnap/dmsnap/session"
	"github.com/dmsnap/dmsnap/snapstore"
)

// Shell completion (dmsnap completion bash|zsh|fish|powershell): the
// activated devices' names from the registry and the session IDs from the
// stores. Completion only reads, takes no lock, and says nothing when
// something cannot be read: it offers what it found.

// completeDevices completes a device's dmsnap name, as the registry of
// --state knows it, in the first argument only.
func completeDevices(e *env) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		reg, err := session.LoadRegistry(e.state)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, d := range reg.Devices {
			if strings.HasPrefix(d.Name, toComplete) {
				out = append(out, cobra.CompletionWithDesc(d.Name, d.Path))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeBlockDevices completes a device path: the shell's own file
// completion.
func completeBlockDevices(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return nil, cobra.ShellCompDirectiveDefault
}

// completeSessions completes a session ID from --store and the stores of
// the registered devices; with latest, the word "latest" too.
func completeSessions(e *env, latest bool) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		stores := []string{e.store}
		if reg, err := session.LoadRegistry(e.state); err == nil {
			for _, d := range reg.Devices {
				if d.Store != "" && !slices.Contains(stores, d.Store) {
					stores = append(stores, d.Store)
				}
			}
		}
		var out []cobra.Completion
		if latest && strings.HasPrefix("latest", toComplete) {
			out = append(out, cobra.CompletionWithDesc("latest", "the newest finished session"))
		}
		for _, store := range stores {
			infos, err := snapstore.ListSessions(store)
			if err != nil {
				continue
			}
			for _, info := range infos {
				if strings.HasPrefix(info.ID, toComplete) {
					out = append(out, cobra.CompletionWithDesc(info.ID, string(info.Status)))
				}
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
