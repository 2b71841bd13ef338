//! HTTP API; filled in by the API issue.
