"""The pure core: the method catalogue and each method's functions (mining, NegFilter's rules,
templates, labels, the corpus rules, scores and metrics), over numpy/torch arrays and Arrow tables.
No Ray, no files, no models: everything here is testable on its own."""
