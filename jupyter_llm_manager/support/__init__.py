"""Small support modules every layer may use: units, deadlines and the clock, the heavy-import guard,
interrupts held back, who holds an object, where the cache is, and old module paths."""
