"""Changing a disk's UUID: the rewriter pod (`pod`) and the steps that drive a DiskRewrite record
through it (`engine`), shared by the admission webhook's controller and the repair Job."""
