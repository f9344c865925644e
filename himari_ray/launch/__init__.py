"""Layer 6: launching searches on rented machines (Vast.ai) and serving them one study."""
