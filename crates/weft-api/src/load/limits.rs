//! Bounds on what the loader accepts, so hostile or broken input costs bounded time and
//! memory and ends in a clear error.

/// Limits applied while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file (or standard input) read, in bytes. Kubernetes itself stores objects of
    /// at most 1.5 MiB; a folder of config files is far below this.
    pub max_input_bytes: u64,
    /// Most YAML nodes one document may expand to, aliases included. This is what stops an
    /// alias bomb ("billion laughs"): each alias counts the full size of what it repeats.
    pub max_document_nodes: usize,
    /// Deepest nesting of mappings and sequences.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 16 * 1024 * 1024,
            max_document_nodes: 250_000,
            max_depth: 100,
        }
    }
}
