//! Images built in code (tar layers with chosen entries; gzip, zstd or none; OCI and Docker media types; indexes) and pushed to a registry.
