//! Authorization that never fails open: path normalization before policies and routes.
