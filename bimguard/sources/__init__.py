"""Where an inventory comes from: a kubectl dump, a support bundle, or the live API.

Each source reads bytes and hands them to `bimguard.decode`; none of them interprets objects.
"""
