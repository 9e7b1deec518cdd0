//! MetaBridge
