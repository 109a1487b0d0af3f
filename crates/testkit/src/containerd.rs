//! containerd 1.6 (Debian) on a private socket and state directory, as the benchmark baseline.
