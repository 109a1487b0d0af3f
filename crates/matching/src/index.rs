//! The caches the matcher chooses from, indexed by repository and layer so that a query touches
//! only the caches that share something with the pod (P4: 10,000 caches in well under 1 ms).
//!
//! The index is kept up to date one cache at a time ([`CacheIndex::upsert`],
//! [`CacheIndex::remove`]): a watch event for one cache touches only that cache's postings, never
//! the other caches, and an event that changes nothing the ranking reads (a build's progress)
//! is recognised and costs one comparison.

use std::collections::HashMap;

use imc_api::{Digest, Reference};

/// One image held by a cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedImage {
    /// The reference as written in the cache's spec.
    pub reference: Reference,
    /// The manifest digest the reference resolved to when the cache was built.
    pub manifest_digest: Option<Digest>,
    /// Compressed layers (digest, size).
    pub layers: Vec<(Digest, u64)>,
}

/// One cache as the matcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The ImageCache object's name (unique: the index is keyed by it).
    pub name: String,
    /// `status.imageCacheId`.
    pub id: String,
    /// `status.phase == Ready`.
    pub ready: bool,
    /// Disk capacity in bytes (`spec.imageCacheSize`): must fit the pod's temporary storage.
    pub capacity_bytes: u64,
    /// Bytes of content on the disk (`status.size`), compared with the pod's image sizes.
    pub size_bytes: u64,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// The images the cache holds.
    pub images: Vec<CachedImage>,
}

/// Where one image of one cache sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Posting {
    pub cache: u32,
    pub image: u32,
}

/// An index over a set of caches, keyed by cache name and maintained one cache at a time.
#[derive(Debug, Default)]
pub struct CacheIndex {
    /// Slots; `None` is a free slot (listed in `free`) left by a removed cache.
    pub(crate) entries: Vec<Option<CacheEntry>>,
    free: Vec<u32>,
    by_name: HashMap<String, u32>,
    /// `registry/repository` → images of that repository.
    pub(crate) by_repo: HashMap<String, Vec<Posting>>,
    /// Layer digest → caches holding it (each cache once).
    pub(crate) by_layer: HashMap<Digest, Vec<u32>>,
}

impl CacheIndex {
    /// Indexes `entries` (a later entry replaces an earlier one of the same name).
    pub fn new(entries: Vec<CacheEntry>) -> Self {
        let mut index = Self::default();
        for entry in entries {
            index.upsert(entry);
        }
        index
    }

    /// Adds a cache or replaces the one of the same name. Returns false (and does nothing)
    /// when the indexed entry is equal already, e.g. after a status write that only moved a
    /// build's progress.
    pub fn upsert(&mut self, entry: CacheEntry) -> bool {
        let slot = match self.by_name.get(&entry.name) {
            Some(&slot) => {
                if self.slot(slot) == Some(&entry) {
                    return false;
                }
                self.unindex(slot);
                slot
            }
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        self.entries.push(None);
                        (self.entries.len() - 1) as u32
                    }
                };
                self.by_name.insert(entry.name.clone(), slot);
                slot
            }
        };
        self.index(slot, &entry);
        self.entries[slot as usize] = Some(entry);
        true
    }

    /// Removes the cache named `name`; the entry it had, if any.
    pub fn remove(&mut self, name: &str) -> Option<CacheEntry> {
        let slot = self.by_name.remove(name)?;
        self.unindex(slot);
        self.free.push(slot);
        self.entries[slot as usize].take()
    }

    /// The indexed cache named `name`.
    pub fn get(&self, name: &str) -> Option<&CacheEntry> {
        self.by_name.get(name).and_then(|&slot| self.slot(slot))
    }

    /// How many caches are indexed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no cache is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The indexed caches, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &CacheEntry> {
        self.entries.iter().flatten()
    }

    /// The cache in `slot`, if the slot is taken.
    pub(crate) fn slot(&self, slot: u32) -> Option<&CacheEntry> {
        self.entries.get(slot as usize).and_then(Option::as_ref)
    }

    /// Taken slots with their caches.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &CacheEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as u32, e)))
    }

    fn index(&mut self, cache: u32, entry: &CacheEntry) {
        for (i, image) in entry.images.iter().enumerate() {
            self.by_repo
                .entry(image.reference.name())
                .or_default()
                .push(Posting {
                    cache,
                    image: i as u32,
                });
            for (digest, _) in &image.layers {
                let holders = self.by_layer.entry(digest.clone()).or_default();
                // Pushes for one cache are consecutive in each list: `last` finds a repeat.
                if holders.last() != Some(&cache) {
                    holders.push(cache);
                }
            }
        }
    }

    /// Drops every posting of the cache in `cache` (its entry stays until the caller replaces
    /// or takes it).
    fn unindex(&mut self, cache: u32) {
        let Some(entry) = self.entries.get(cache as usize).and_then(Option::as_ref) else {
            return;
        };
        for image in &entry.images {
            let name = image.reference.name();
            if let Some(postings) = self.by_repo.get_mut(&name) {
                postings.retain(|p| p.cache != cache);
                if postings.is_empty() {
                    self.by_repo.remove(&name);
                }
            }
            for (digest, _) in &image.layers {
                if let Some(holders) = self.by_layer.get_mut(digest) {
                    holders.retain(|c| *c != cache);
                    if holders.is_empty() {
                        self.by_layer.remove(digest);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, images: &[(&str, &[u8])]) -> CacheEntry {
        CacheEntry {
            name: name.into(),
            id: format!("imc-{name}"),
            ready: true,
            capacity_bytes: 20 << 30,
            size_bytes: 1 << 30,
            created: 1,
            images: images
                .iter()
                .map(|(r, layers)| CachedImage {
                    reference: r.parse().unwrap(),
                    manifest_digest: None,
                    layers: layers.iter().map(|l| (Digest::of(&[*l]), 10)).collect(),
                })
                .collect(),
        }
    }

    /// Posting lists as sorted (key, holders) pairs.
    type Postings = Vec<(String, Vec<String>)>;

    /// The postings by repository and by layer, with cache names for slots, to compare two
    /// indexes whatever their slot numbers.
    fn shape(index: &CacheIndex) -> (Postings, Postings) {
        let name = |slot: u32| index.slot(slot).unwrap().name.clone();
        let mut repos: Vec<_> = index
            .by_repo
            .iter()
            .map(|(k, v)| {
                let mut names: Vec<_> = v
                    .iter()
                    .map(|p| format!("{}#{}", name(p.cache), p.image))
                    .collect();
                names.sort();
                (k.clone(), names)
            })
            .collect();
        repos.sort();
        let mut layers: Vec<_> = index
            .by_layer
            .iter()
            .map(|(k, v)| {
                let mut names: Vec<_> = v.iter().map(|c| name(*c)).collect();
                names.sort();
                (k.to_string(), names)
            })
            .collect();
        layers.sort();
        (repos, layers)
    }

    #[test]
    fn upkeep_one_cache_at_a_time_equals_a_fresh_build() {
        let a = entry("a", &[("r.io/x:1", &[1, 2]), ("r.io/y:1", &[2, 3])]);
        let b = entry("b", &[("r.io/x:2", &[1])]);
        let c = entry("c", &[("r.io/z:1", &[9])]);
        let mut index = CacheIndex::new(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(index.len(), 3);

        // The same entry again (a progress-only status write) changes nothing.
        assert!(!index.upsert(b.clone()));

        // b's images change: its old postings go, the new ones come.
        let b2 = entry("b", &[("r.io/z:2", &[9, 4])]);
        assert!(index.upsert(b2.clone()));
        assert_eq!(
            shape(&index),
            shape(&CacheIndex::new(vec![a.clone(), b2.clone(), c.clone()]))
        );

        // a is deleted; its slot is reused by d.
        assert_eq!(index.remove("a"), Some(a.clone()));
        assert_eq!(index.remove("a"), None);
        let d = entry("d", &[("r.io/x:1", &[1])]);
        assert!(index.upsert(d.clone()));
        assert_eq!(index.entries.len(), 3, "the free slot is reused");
        assert_eq!(
            shape(&index),
            shape(&CacheIndex::new(vec![b2.clone(), c.clone(), d.clone()]))
        );
        assert_eq!(index.get("d"), Some(&d));
        assert!(index.get("a").is_none());
        let mut names: Vec<_> = index.entries().map(|e| e.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d"]);

        // Nothing is left of removed caches: no empty posting lists either.
        for name in ["b", "c", "d"] {
            index.remove(name);
        }
        assert!(index.is_empty());
        assert!(index.by_repo.is_empty() && index.by_layer.is_empty());
    }
}
