"""The report stage's HTML page (report/report.html) and what it shows beyond the metrics: the hardest
images (`hardest`), their thumbnails (`thumbnails`), the negative labels with the judges' decisions
(`negatives`), rendered by `page` with the inline script and style of `assets/`."""
