//! Placeholder: admin.
