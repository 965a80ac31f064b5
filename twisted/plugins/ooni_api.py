from twisted.application.service import ServiceMaker

ooni_api = ServiceMaker(
    "OONI API", "ooni_twisted.service", "The OONI API backend in one process.", "ooni-api"
)
