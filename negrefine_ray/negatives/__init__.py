"""Negative labels as Arrow tables, below the stages that mine (mine) and re-mine (filter) them."""
