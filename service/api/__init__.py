"""HTTP routes, one blueprint per resource.

Routes parse the request, call one function of ``service.vision`` and shape
the JSON; they hold no model code.
"""
