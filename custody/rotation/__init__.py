"""Rotation: replacing devices or signatories with a successor policy, a test spend, the migration of every coin, retirement."""
