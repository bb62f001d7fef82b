"""Changes to who may do what, made only by a quorum of admins."""
