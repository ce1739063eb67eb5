"""Command-line drivers of the TSW-SL experiments (flows, colour transfer, generator): run, time, tabulate, plot.

The library functions live in tsw_sl.flows, tsw_sl.colour_transfer and tsw_sl.generate; these modules add the
impure parts (wall-clock timing, files, matplotlib with the Agg backend).
"""
