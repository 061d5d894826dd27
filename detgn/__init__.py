"""detgn: Mask R-CNN with Group Normalization (C4 / FPN, BN*, GN, LN, IN, BN, SyncBN)."""
__version__ = "0.1.0"
