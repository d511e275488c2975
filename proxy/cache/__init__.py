"""Where entries live: the memory LRU, Redis (`redis/`, the only code that imports redis), the read-through
tiered cache, the cross-process fill lease and the pub/sub events that keep processes coherent."""
