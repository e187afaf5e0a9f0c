package session

import (
	"context"

	"github.com/dmsnap/dmsnap/snapstore"
)

func retentionOrNil(r snapstore.Retention) *snapstore.Retention {
	if r.IsZero() {
		return nil
	}
	return &r
}

// SetRetention changes the retention policy of device arg (a name or a
// path), under the lock; change gets the policy as it is and edits it.
// It returns the new policy.
func (m *Manager) SetRetention(ctx context.Context, arg string, change func(*snapstore.Retention)) (snapstore.Retention, error) {
	const op = "set"
	var out snapstore.Retention
	err := m.withLock(ctx, func(reg *Registry) error {
		d, err := m.lookup(ctx, reg, arg)
		if err != nil {
			return deviceErr(op, arg, "", err)
		}
		var r snapstore.Retention
		if d.Retention != nil {
			r = *d.Retention
		}
		change(&r)
		if err := r.Validate(); err != nil {
			return deviceErr(op, d.Name, "", err)
		}
		d.Retention, out = retentionOrNil(r), r
		return reg.Save(m.StateDir)
	})
	return out, err
}
