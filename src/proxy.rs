//! Placeholder: proxy.
