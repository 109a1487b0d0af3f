//! Proxies in front of a real registry: fault injection (resets, 5xx, flipped bytes, slow links) and bandwidth/latency shaping.
