package aliases

// The model: the directory index (index.go) and the maps derived from it,
// kept up to date per change (expand.go for the group expansions,
// contribute.go for what each entry puts into the maps) or built whole at
// once (build.go, expandall.go); rendered into table lines by render.go.

import "mailsync/address"

// set is a string set.
type set map[string]struct{}

// model is the directory index and the maps derived from it. It is not
// safe for concurrent use; the Handler serialises access.
type model struct {
	hostFQDN string
	limit    int

	byUUID  map[string]*entry
	byDN    map[string][]*entry // normalised DN -> entries carrying it, by UUID
	parents map[string][]string // normalised member DN -> UUIDs of the groups listing it, each once

	exp     map[string][]string // group UUID -> expansion (member addresses, sorted)
	missing map[string][]string // group UUID -> member DNs not in the index
	cycles  map[string][]string // sorted UUIDs joined by " " -> UUIDs of one cycle
	inCycle map[string]string   // group UUID -> key into cycles
	contrib map[string]*contribution

	aliasOwners   owners // alias key -> contributions defining it
	collisions    set    // alias keys with more than one owner
	invalid       set    // UUIDs whose contribution skipped an address
	overLimit     set    // group UUIDs with an address expanding past the limit
	mailboxOwners owners // mailbox key -> contributions defining it
	domainOwners  owners

	// The rendered tables, and the keys whose lines need re-rendering.
	aliasT, mailboxT, domainT             *rendered
	dirtyAlias, dirtyMailbox, dirtyDomain set
	bulk                                  bool // buildModel renders everything at the end

	// later, when not nil, completes a full build (see complete).
	later func()

	// Changes staged since the last refresh (see stage.go).
	staleIDs set
	staleDNs set

	// While bulk, new one-element index lists come from these.
	entrySlab   slab[*entry]
	uuidSlab    slab[string]
	contribSlab slab[*contribution]
	// For the mailbox index, built alongside the alias index.
	contribSlab2 slab[*contribution]
}

// slab hands out one-element slices cut from shared chunks: the index
// lists of a full build, which are nearly all one element long, then cost
// an allocation per thousand. Only for the full build: later changes
// allocate their own, so a chunk is held at most until the lists of the
// build are all replaced.
type slab[T any] []T

// one returns []T{v}, from the slab when it is not nil.
func (s *slab[T]) one(v T) []T {
	if s == nil {
		return []T{v}
	}
	if len(*s) == cap(*s) {
		*s = make([]T, 0, 1024)
	}
	*s = append(*s, v)
	n := len(*s)
	return (*s)[n-1 : n : n]
}

// slabs returns the slabs to use now: none unless in a full build.
func (m *model) slabs() (*slab[*entry], *slab[string], *slab[*contribution], *slab[*contribution]) {
	if !m.bulk {
		return nil, nil, nil, nil
	}
	return &m.entrySlab, &m.uuidSlab, &m.contribSlab, &m.contribSlab2
}

func newModel(hostFQDN string, limit int) *model {
	return &model{
		hostFQDN:      address.CanonicalHost(hostFQDN),
		limit:         limit,
		byUUID:        map[string]*entry{},
		byDN:          map[string][]*entry{},
		parents:       map[string][]string{},
		exp:           map[string][]string{},
		missing:       map[string][]string{},
		cycles:        map[string][]string{},
		inCycle:       map[string]string{},
		contrib:       map[string]*contribution{},
		aliasOwners:   owners{},
		collisions:    set{},
		invalid:       set{},
		overLimit:     set{},
		mailboxOwners: owners{},
		domainOwners:  owners{},
		aliasT:        newRendered(),
		mailboxT:      newRendered(),
		domainT:       newRendered(),
		dirtyAlias:    set{},
		dirtyMailbox:  set{},
		dirtyDomain:   set{},
	}
}
