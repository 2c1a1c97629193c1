package homeserver

import "mailsync/postmap"

// installMap writes one table atomically with the writer the aliases
// handler uses too.
func installMap(cfg Config, name string, src []byte) error {
	w := postmap.Writer{Dir: cfg.Dir, Type: cfg.MapType, Postmap: cfg.PostmapPath, ConfigDir: cfg.PostfixConfigDir,
		Installed: cfg.Installed}
	return w.Install(postmap.Table{Name: name, Src: src})
}
