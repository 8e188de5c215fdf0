//! Where each field of a resource starts, by field path.
//!
//! Paths are written the way messages print them: `spec.http[0].route[1].weight`. The map
//! stores a 64-bit hash of each path and its line, sorted, so it costs 12 bytes a field and
//! a lookup is a binary search. A hash collision could only point a message at a wrong
//! line, never change what is validated.

/// Lines of the fields of one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanMap {
    entries: Vec<(u64, u32)>,
}

impl SpanMap {
    /// Builds the map from `(path hash, line)` pairs; the first line recorded for a path wins.
    pub(crate) fn from_entries(mut entries: Vec<(u64, u32)>) -> Self {
        entries.sort_by_key(|&(hash, _)| hash);
        entries.dedup_by_key(|&mut (hash, _)| hash);
        entries.shrink_to_fit();
        Self { entries }
    }

    /// The line where the field at `path` starts. When that field is absent, the line of
    /// the nearest enclosing field that is present; `None` when nothing is.
    pub fn line_of(&self, path: &str) -> Option<u32> {
        let mut path = path;
        loop {
            let hash = hash_path(path);
            if let Ok(index) = self.entries.binary_search_by_key(&hash, |&(h, _)| h) {
                return Some(self.entries[index].1);
            }
            path = parent(path)?;
        }
    }
}

/// FNV-1a: small, fast, and stable across runs.
pub(crate) fn hash_path(path: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `spec.http[0].route` → `spec.http[0]` → `spec.http` → `spec` → `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        return path.rfind('[').map(|i| &path[..i]);
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_the_enclosing_field() {
        let map = SpanMap::from_entries(vec![
            (hash_path(""), 1),
            (hash_path("spec"), 5),
            (hash_path("spec.http[0]"), 7),
        ]);
        assert_eq!(map.line_of("spec.http[0]"), Some(7));
        assert_eq!(map.line_of("spec.http[0].route[2].weight"), Some(7));
        assert_eq!(map.line_of("spec.tcp"), Some(5));
        assert_eq!(map.line_of("metadata.name"), Some(1));
    }
}
