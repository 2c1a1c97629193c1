package aliases

// What the model keeps of an entry's attributes: only those its
// contribution is computed from, in a short list. The model holds one per
// directory entry for as long as the handler runs; as an event.Attrs map
// (a group of eight slots however few attributes an entry has, object
// classes, uid and cn among them) that was some 40 MB at 100k users.

import "mailsync/event"

// contributing lists the attributes contributeInto and sharedGroupKeys
// read; a group's uniqueMember values are kept apart (entry.members).
var contributing = []string{
	event.AttrPrimaryAddress, event.AttrAlternativeAddress, event.AttrForwardAddress,
	event.AttrForwardCopyToSelf, event.AttrHomeServer, event.AttrCanonicalRewrite,
	event.AttrMailMember,
}

// attrList is an entry's contributing attributes; a domain's cn too.
type attrList []attrVals

type attrVals struct {
	name string
	vals []string
}

// keptAttrs is the attrList of a, sharing a's value lists.
func keptAttrs(kind event.Kind, a event.Attrs) attrList {
	n := 0
	for _, name := range contributing {
		if _, ok := a[name]; ok {
			n++
		}
	}
	cn, hasCN := a[event.AttrCN]
	hasCN = hasCN && kind == event.KindDomain
	if hasCN {
		n++
	}
	if n == 0 {
		return nil
	}
	out := make(attrList, 0, n)
	for _, name := range contributing {
		if vals, ok := a[name]; ok {
			out = append(out, attrVals{name, vals})
		}
	}
	if hasCN {
		out = append(out, attrVals{event.AttrCN, cn})
	}
	return out
}

// get is the values of name, as event.Attrs indexing gives them.
func (l attrList) get(name string) []string {
	for i := range l {
		if l[i].name == name {
			return l[i].vals
		}
	}
	return nil
}

// First is event.Attrs.First.
func (l attrList) First(name string) string {
	if v := l.get(name); len(v) > 0 {
		return v[0]
	}
	return ""
}
