"""Every method's scorer (scoring.registry), the columns they write (scoring.columns) and the input
they share (scoring.inputs), below the score stage that runs them over the images.
"""
