//! Multi-node integration tests, network simulations and end-to-end tests of
//! the `plexus` binary live here as later issues land (see ARCHITECTURE.md).
