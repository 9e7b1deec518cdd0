# public_service.py
import metabridge as meta

# O serviço escutará em todas as interfaces de rede
@meta.create("public-service", host="0.0.0.0").daemon()
class PublicAPI:
    @meta.function
    def status(self):
        return "Serviço público está operacional!"

meta.run()
