"""The data path of the proxy listener, one module per step: dispatch (handler), the ruled and the
origin-governed caching paths, fills, batching, answers from stored entries, the headers that cross the proxy,
the upstream client and streamed pass-through."""
