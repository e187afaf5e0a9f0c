package hostfiles

import "fmt"

// The weekly verification's units.
const (
	VerifyServiceName = "dmsnap-verify.service"
	VerifyTimerName   = "dmsnap-verify.timer"
	VerifyServicePath = "/etc/systemd/system/" + VerifyServiceName
	VerifyTimerPath   = "/etc/systemd/system/" + VerifyTimerName
)

// VerifyService renders dmsnap-verify.service: `dmsnap sessions verify`
// over the store, at idle I/O priority. A damaged session fails the unit
// (exit 1), so `systemctl --failed` and the journal show it; an OS error
// that kept a session from being read is exit 5, a failure too.
func VerifyService(opt Options) (string, error) {
	opt = opt.withDefaults()
	if err := opt.check(); err != nil {
		return "", err
	}
	return fmt.Sprintf(`[Unit]
Description=dmsnap: verify the checksums of every session in the store
Documentation=man:dmsnap-sessions-verify(8)
RequiresMountsFor=%[2]s %[3]s

[Service]
Type=oneshot
ExecStart=%[1]s --state %[2]s --store %[3]s sessions verify
Nice=19
IOSchedulingClass=idle
%[4]s`, opt.Binary, opt.StateDir, opt.Store, hardening), nil
}

// VerifyTimer renders dmsnap-verify.timer: once a week, at a random hour
// of it, and at the next boot when the machine was off at the time
// (Persistent). systemctl enable --now dmsnap-verify.timer starts it.
func VerifyTimer() string {
	return `[Unit]
Description=dmsnap: verify the store's sessions every week
Documentation=man:dmsnap-sessions-verify(8)

[Timer]
OnCalendar=weekly
RandomizedDelaySec=6h
Persistent=true

[Install]
WantedBy=timers.target
`
}
