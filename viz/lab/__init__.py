"""The Tree Lab app's logic; `app.py` holds only the Gradio layout and wiring.

    config.py    paths, environment knobs, widget ranges, the head and policy menus (eagle2.registry)
    state.py     RunParams: one run's checked parameters (`validate`)
    run.py       models loaded once (Models), one generation at a time, streamed (generate_stream)
    traces.py    reading, checking and writing trace files; the shipped examples
    views.py     what each view shows for a trace: {component name: value} dicts
    handlers.py  the Gradio callbacks, as {component name: value} producers
    texts.py     the page's CSS, JavaScript and help texts

Importing `viz` does not import this package (figures need no model).
"""
