# Test stand-in for wendelin.core's package: only what the ZODB state of a ZBigFile needs.
