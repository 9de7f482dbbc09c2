//go:build race

package tier

// raceEnabled: the race detector's shadow memory inflates RSS.
const raceEnabled = true
