package relay

// ReadPooled exposes (*TCP).readPooled to the external tests.
func ReadPooled(c *TCP) (bp *[]byte, n int, err error) { return c.readPooled() }

// ReadsPooled exposes (*TCP).readsPooled.
func ReadsPooled(c *TCP) bool { return c.readsPooled() }
