//! Plexus reactors: PEX + AddrBook, chain, mempool, consensus, block sync and
//! mining. Empty until the issues that fill it land (see ARCHITECTURE.md).
