"""Transfer strategies behind one interface: crossback, mergenet, mona, freqkd."""
