package ops

// SetBeforeSwitch makes o's cluster moves run f before they switch the directory, and fail there if f does.
func (o *Ops) SetBeforeSwitch(f func() error) { o.beforeSwitch = f }
