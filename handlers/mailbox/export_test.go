package mailbox

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
