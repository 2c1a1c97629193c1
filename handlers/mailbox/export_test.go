package mailbox

import "path/filepath"

// SetRename replaces the rename(2) of homes, so a test can make it fail
// with EXDEV and drive the cross-filesystem copy on one filesystem.
func SetRename(h *Handler, f func(from, to string) error) { h.rename = f }

// RenameNoReplace is the real one.
var RenameNoReplace = renameNoReplace

// CopyTree and VerifyTree are the cross-filesystem copy and its check.
var (
	CopyTree   = copyTree
	VerifyTree = verifyTree
)

// AppliedRecord reads the state last applied for uuid from the state dir,
// as a restart would find it; ok is false without a record.
func AppliedRecord(stateDir, uuid string) (st *State, ok bool, err error) {
	dir := filepath.Join(stateDir, "mailbox-applied")
	cache, _, _, err := readAppliedLog(filepath.Join(dir, appliedLog))
	if err != nil {
		return nil, false, err
	}
	legacy, err := legacyApplied(dir)
	if err != nil {
		return nil, false, err
	}
	s := &appliedStore{dir: dir, cache: cache, legacy: legacy}
	return s.get(uuid)
}
