package planhook

// SetBeforeWrite runs f between the read and the write of an assignment:
// tests land another writer's record there.
func (h *Handler) SetBeforeWrite(f func()) { h.beforeWrite = f }
