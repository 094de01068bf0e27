//! Placeholder: demo.
