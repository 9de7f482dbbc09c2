// Package chap holds the rules iSCSI CHAP secrets meet, for the gateway
// checking a volume's and for an initiator checking its own before it
// logs in with them.
package chap

import "errors"

// CheckSecrets checks a CHAP secret and a mutual CHAP secret; either may
// be empty (not used).
func CheckSecrets(secret, mutual string) error {
	for _, s := range []string{secret, mutual} {
		if s != "" && (len(s) < 12 || len(s) > 255) {
			return errors.New("CHAP secrets must be 12 to 255 characters (RFC 7143 asks for at least 96 bits)")
		}
	}
	if mutual != "" && mutual == secret {
		return errors.New("the mutual CHAP secret must differ from the CHAP secret (RFC 7143 §12.1.3)")
	}
	return nil
}
