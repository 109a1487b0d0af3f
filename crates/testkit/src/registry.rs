//! A real Debian `docker-registry` on a free loopback port (anonymous, htpasswd Basic, or token auth).
