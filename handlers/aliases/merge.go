package aliases

// Merges of sorted, duplicate-free lists, the expansions' building block.

import (
	"cmp"
	"slices"
	"sort"
)

func sortedUnion(a, b []string) []string {
	if len(a) == 0 {
		out := append([]string(nil), b...)
		sort.Strings(out)
		return dedupSorted(out)
	}
	out := append(append([]string(nil), a...), b...)
	sort.Strings(out)
	return dedupSorted(out)
}

func dedupSorted(s []string) []string {
	if len(s) < 2 {
		return s
	}
	w := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[w-1] {
			s[w] = s[i]
			w++
		}
	}
	return s[:w]
}

// mergeAll is the sorted union of out and lists, all sorted and
// duplicate-free, in one allocation; it never modifies lists, and shares a
// list when that is the union. Two-way merges, longest lists first, cost
// fewer comparisons than one k-way merge.
func mergeAll[T cmp.Ordered](out []T, lists [][]T) []T {
	heads := make([][]T, 0, len(lists)+1)
	n := 0
	for _, l := range append(lists, out) {
		if len(l) > 0 {
			heads = append(heads, l)
			n += len(l)
		}
	}
	switch len(heads) {
	case 0:
		return out
	case 1:
		return heads[0]
	}
	slices.SortFunc(heads, func(a, b []T) int { return len(b) - len(a) })
	dst := mergeInto(make([]T, 0, n), heads[0], heads[1])
	for _, h := range heads[2:] {
		dst = mergeBack(dst, h)
	}
	return dst
}

// mergeBack merges b into dst in place, from the back, dst having the
// room; both sorted and duplicate-free.
func mergeBack[T cmp.Ordered](dst, b []T) []T {
	i, j := len(dst)-1, len(b)-1
	w := len(dst) + len(b)
	dst = dst[:w]
	for j >= 0 {
		w--
		switch {
		case i >= 0 && dst[i] > b[j]:
			dst[w] = dst[i]
			i--
		case i >= 0 && dst[i] == b[j]:
			dst[w] = dst[i]
			i--
			j--
		default:
			dst[w] = b[j]
			j--
		}
	}
	// dst[:i+1] is in place; a duplicate left a gap of w-(i+1) before dst[w:].
	if gap := w - (i + 1); gap > 0 {
		copy(dst[i+1:], dst[w:])
		dst = dst[:len(dst)-gap]
	}
	return dst
}

// mergeInto appends the sorted union of a and b to dst, which must not
// overlap them.
func mergeInto[T cmp.Ordered](dst, a, b []T) []T {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			dst = append(dst, a[i])
			i++
		case a[i] > b[j]:
			dst = append(dst, b[j])
			j++
		default:
			dst = append(dst, a[i])
			i++
			j++
		}
	}
	dst = append(dst, a[i:]...)
	return append(dst, b[j:]...)
}
