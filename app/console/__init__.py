"""The Courier console: server-rendered pages under /console for ops staff (Jinja2, htmx, uPlot).

An adapter like the API: its routes call the same domain and engine functions the REST routes call, and hold no
business logic of their own. `web.mount(app)` serves it; `session` is its sign-in.
"""
