"""One module per section of bench/RESULTS.md, each exposing its `m_<metric>` function."""
