"""Signing devices: inventory, key ceremony, registration, firmware, rotation, signing through HWI."""
