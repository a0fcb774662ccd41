//! Larder pure core
