package front

// Transports is how many absolute-form connection pools h keeps.
func Transports(h *Handler) int { return h.transports.len() }
